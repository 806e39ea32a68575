"""The trainer behind `train.py`: config and CLI, resume, the SFT stage, the GRPO loop, export."""
