import json

from conftest import run_cli

# The research notes' configurations (notes 004) and their exact parameter counts.
EXPECTED = {"phase0": 29_995_392, "phase1": 1_634_208, "phase2": 3_368_576, "phase3": 5_278_368, "phase4": 7_242_624}


def test_presets_cli_prints_exact_counts():
    r = run_cli("presets", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["preset"]: row for row in json.loads(r.stdout)}
    for name, n in EXPECTED.items():
        assert rows[name]["params"] == n and rows[name]["family"] == "gpt"
    assert rows["soma"]["params"] == 685_184  # 3 layers, 4 heads, d_model 128, 576 tokens, block 128
    # nanoGPT's GPT-2 shapes (vocabulary padded to 50,304; model.py's from_pretrained and config/train_gpt2.py)
    assert rows["gpt2"]["params"] == 124_475_904 and rows["gpt2-xl"]["params"] == 1_557_686_400


def test_presets_table_lists_every_family():
    r = run_cli("presets")
    assert r.exit_code == 0
    assert "5,278,368" in r.stdout and "phase3" in r.stdout


def test_gpt_state_dict_names_match_nanogpt():
    from edgekit.models.gpt import GPT, GPTConfig

    names = set(GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=8, bias=False)).state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
            "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.0.ln_2.weight",
            "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight",
            "lm_head.weight"} == names
