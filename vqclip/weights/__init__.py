"""The weights subsystem: the registry (data, lookups, the user's TOML models), verified downloads, the cache
folder, what a file is, safe checkpoint reading, and loading VQGANs, GPTs, CLIPs and the upscaler from them.

Callers name a model (a registry entry, a Hugging Face CLIP tag or a local file) and get a loaded model back;
where its bytes came from (vqclip's mirrors, the Hub, a local path) stays in here.
"""
