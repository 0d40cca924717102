"""The model: shared operations (:mod:`.ops`), caches (:mod:`.cache`), the Transformer assembled from
components (:mod:`.transformer`), transforms applied to it (:mod:`.transforms`; LoRA is the transform
plugin ``zoo_plugins.transform.lora``) and the device/dtype parser (:mod:`.device`)."""
