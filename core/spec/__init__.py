"""The spec layer: named models from manifests (:mod:`.manifest`), resolved and validated into specs
(:mod:`.resolve`), and the loaded registry of plugins and manifests (:mod:`.catalog`)."""
