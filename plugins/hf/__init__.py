"""The built-in Hugging Face architecture mappings, registered through the hook register_hf_arch."""
