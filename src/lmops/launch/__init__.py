"""``lmops engine launch``: one engine spec, translated into the flags of vLLM, lmdeploy, TGI or llama.cpp, and the
engine run as a managed subprocess."""
