# Loads an exported tiny-qwen2 checkpoint in Hugging Face transformers (strict: every tensor must
# match by name and shape) and prints the mean loss on the first 4 sequences of a token file, the
# batch stp-train reads at step 1 (M=2, b=2, shuffle off). Used by scripts/check_hf_export.sh.
import os, sys, numpy as np
sys.path.insert(0, os.environ.get("STP_HF_PYPATH", ""))
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from safetensors.torch import load_file
c = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                max_position_embeddings=32, tie_word_embeddings=False, attn_implementation="eager")
m = Qwen2ForCausalLM(c).float().eval()
missing, unexpected = m.load_state_dict(load_file(sys.argv[1]), strict=True), None
toks = np.fromfile(sys.argv[2], dtype="<u2")
T, n = 32, 4  # step 1 reads sequences 0..M*b-1 = 0..3, each tokens [i*T, i*T+T]
x = torch.tensor(np.stack([toks[i*T:i*T+T] for i in range(n)]).astype(np.int64))
y = torch.tensor(np.stack([toks[i*T+1:i*T+T+1] for i in range(n)]).astype(np.int64))
with torch.no_grad():
    logits = m(x).logits
loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
print("transformers", __import__("transformers").__version__, "loss", repr(loss.item()))
