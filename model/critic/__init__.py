"""The critic: a small LLaVA-style vision-language model that reads (prompt, image) and writes a reflection."""
