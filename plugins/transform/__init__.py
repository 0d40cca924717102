"""Built-in transforms: changes applied to a built model (LoRA)."""
