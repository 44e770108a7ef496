"""``iclm experiment``: train and evaluate LoRA/ICLM systems on ACRE and RAVEN, end to end."""
