"""Source fetch (SSRF-safe), decoding and post-processing of images."""
