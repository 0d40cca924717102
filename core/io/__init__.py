"""Files the zoo writes and reads: atomic writes (:mod:`.atomic`), checkpoints and run directories
(:mod:`.checkpoint`), and safetensors (:mod:`.safetensors`)."""
