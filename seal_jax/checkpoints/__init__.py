"""Checkpoint I/O: HF safetensors (models), PEFT (adapters), orbax (training state)."""
