"""The model: shared operations (:mod:`.ops`), caches (:mod:`.cache`), the Transformer assembled from
components (:mod:`.transformer`), LoRA adapters (:mod:`.lora`) and the device/dtype parser
(:mod:`.device`)."""
