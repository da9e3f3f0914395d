#!/usr/bin/env python3
"""Trains the classic engine's viseme network (vcam_talker/data/visemes.npz).

Data recipe, all made here: espeak-ng (through its library, with phoneme events) and
Festival (segment times) speak sentences and random syllable strings in many voices,
languages, rates and pitches. Each clip gets random silence around it, gain, clipping,
noise, reverb and band-limiting. Every 20 ms the features of
``vcam_talker.engines.classic.visemes`` are taken exactly as the engine takes them live,
with the label of the phone that sounds at that instant (a stop's silent closure counts as
closed, see ``benchmarks/speech.py``).

The voices and texts of ``benchmarks/bench_visemes.py`` are held out. Needs torch (a
project dependency) for training only; the engine runs the result with numpy.

    .venv/bin/python scripts/train_visemes.py            # ~20 min on 2 cores (1171 s here)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import speech  # noqa: E402
from vcam_talker.engines.classic import visemes as V  # noqa: E402
from vcam_talker.engines.classic.motion import LogMel  # noqa: E402

HOP = speech.RATE // 100
STEP = 2  # a sample every 2 hops (20 ms)

SENTENCES = {
    "en": [
        "The quick brown fox jumps over the lazy dog.", "Please bring me a bowl of warm soup.",
        "My brother bought maple syrup from the market.", "Who knew you would move to Boston in June?",
        "We need three cheap green sheets for the beach.", "A big black bear ate the ripe plums.",
        "Five vivid violets wave in the evening breeze.", "Bob and Pam made a map of the mountain pass.",
        "Could you look at the blue moon tonight?", "She keeps the keys in a little metal box.",
        "Many people prefer apples to bananas.", "Put the paper back above the piano.",
        "Food and music bring families together.", "Every morning I walk my dog by the pool.",
        "The baby smiled and grabbed the bubble.", "Our boat floated slowly toward the bay.",
        "I think the meeting is moved to Monday afternoon.", "Remember to bring your umbrella, it might rain.",
        "The lamp by the window broke in the storm.", "Thank you for coming, we appreciate your help.",
        "Fifteen fat frogs fell off the old wooden bridge.", "Mom made pumpkin pie for the picnic.",
        "Do you remember the number of the room?", "Beneath the bridge the water moved swiftly.",
        "A few members of the team were absent.", "Open the map and find the nearest harbour.",
    ],
    "de": ["Bitte bring mir morgen ein Brot mit.", "Mein Bruder baut ein Boot am Meer.",
           "Wir fahren im Sommer an die Ostsee.", "Die Blumen im Garten bluehen prachtvoll.",
           "Papa kauft Milch, Butter und Brombeeren.", "Um neun Uhr beginnt die Pruefung."],
    "fr": ["Bonjour, mon ami, comment vas-tu ce matin?", "Le petit bateau flotte sur la mer bleue.",
           "Ma mere prepare une bonne soupe aux pommes.", "Nous partons a Paris au mois de mai.",
           "Il fait beau, nous mangeons au bord du lac.", "Pierre boit un peu de vin blanc."],
    "es": ["Mi madre prepara una sopa muy buena.", "El barco pequeno navega por el mar.",
           "Vamos a la playa por la manana.", "Pablo bebe mucha agua despues de jugar."],
    "it": ["Buongiorno, mamma, andiamo al mare.", "Il bambino mangia una mela rossa.",
           "Per favore, porta il pane e il burro.", "Abbiamo visto molti uccelli nel bosco."],
    "nl": ["Mijn broer woont in een mooi huis bij het meer.", "Wij eten brood met boter en kaas.",
           "De boot vaart langzaam over de rivier."],
    "pl": ["Mama kupila mleko i chleb w sklepie.", "Pan Piotr mieszka blisko morza.",
           "Bardzo lubie pomidory i ogorki."],
    "pt": ["Meu pai bebe muito cafe pela manha.", "O barco pequeno voltou para o porto.",
           "Bom dia, minha amiga, tudo bem?"],
}
# languages read the random syllables by their own rules
SYLLABLE_LANGS = ["en", "de", "fr", "it", "nl", "pl", "pt", "sv", "cs", "fi", "hu", "ro", "id", "sk", "hr", "es"]
CONS = "p b m f v t d k g s z n l r w h j sh ch th".split()
VOWS = "a e i o u ee oo ai ou".split()

# held out for the benchmark: es as a language, these variants, Festival's HTS voice
TRAIN_VOICES = (["en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]
                + ["de", "fr", "it", "nl", "pl", "pt", "sv", "cs", "fi", "hu", "ro", "id", "sk", "hr"])
TRAIN_VARIANTS = ["", "+m1", "+m2", "+m4", "+m6", "+f1", "+f2", "+f4", "+klatt", "+klatt3", "+Andy", "+david",
                  "+linda", "+robert", "+steph", "+iven", "+max", "+annie", "+Michael", "+paul"]
FESTIVAL_TRAIN = {"kal_diphone": "en", "ked_diphone": "en", "cmu_us_slt_arctic_hts": "en", "lp_diphone": "it",
                  "pc_diphone": "it"}  # Festival's Catalan HTS voice is held out


def random_text(rng: np.random.Generator) -> str:
    words = []
    for _ in range(rng.integers(3, 8)):
        n = rng.integers(1, 4)
        words.append("".join(str(rng.choice(CONS)) + str(rng.choice(VOWS)) for _ in range(n)))
    return " ".join(words) + "."


def warp(u: speech.Utterance, rng: np.random.Generator) -> speech.Utterance:
    """Vocal tract length and pitch perturbation: played back 0.88..1.12 times as fast."""
    import soxr

    r = float(rng.uniform(0.88, 1.12))
    return speech.retime(u, soxr.resample(u.audio, speech.RATE * r, speech.RATE), r)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import signal

    x = x / (np.abs(x).max() + 1e-9) * 0.7
    if rng.random() < 0.5:  # reverb: a decaying noise tail
        rt = rng.uniform(0.08, 0.6)
        n = int(rt * speech.RATE)
        ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        ir[0] = 1.0 / rng.uniform(0.15, 0.6)
        x = signal.fftconvolve(x, ir)[: len(x)].astype(np.float32)
        x /= np.abs(x).max() + 1e-9
    if rng.random() < 0.4:  # spectral tilt: a microphone or a room brighter or duller
        b, a = signal.butter(1, rng.uniform(300, 2500), "low" if rng.random() < 0.5 else "high", fs=speech.RATE)
        x = (x + rng.uniform(0.3, 1.5) * signal.lfilter(b, a, x)).astype(np.float32)
    if rng.random() < 0.3:
        b, a = signal.butter(4, rng.uniform(3000, 7000), "low", fs=speech.RATE)
        x = signal.lfilter(b, a, x).astype(np.float32)
    if rng.random() < 0.3:
        b, a = signal.butter(2, rng.uniform(80, 350), "high", fs=speech.RATE)
        x = signal.lfilter(b, a, x).astype(np.float32)
    if rng.random() < 0.6:  # white, pink or brown noise at 15..50 dB SNR
        noise = rng.standard_normal(len(x)).astype(np.float32)
        k = rng.integers(0, 3)
        if k:
            noise = np.cumsum(noise) if k == 2 else signal.lfilter([0.05, 0.05], [1, -0.95], noise)
            noise = (noise - signal.medfilt(noise, 101) if k == 2 else noise).astype(np.float32)
        rms = np.sqrt(np.mean(x ** 2)) + 1e-9
        snr = rng.uniform(15, 50)
        x = x + noise / (np.sqrt(np.mean(noise ** 2)) + 1e-9) * rms * 10 ** (-snr / 20)
    gain = 10 ** (rng.uniform(-35, 3) / 20)
    x = x / (np.abs(x).max() + 1e-9) * gain
    if rng.random() < 0.1:
        x = np.clip(x * 4, -1, 1)
    return x.astype(np.float32)


def frame_labels(utt: speech.Utterance, times: np.ndarray) -> np.ndarray:
    """The viseme index sounding at each time; closures as ``speech.closure_spans`` finds them,
    and an espeak-ng p's aspiration after its burst as the sound it opens into."""
    idx = {v: i for i, v in enumerate(V.VISEMES)}
    lab = np.full(len(times), idx["rest"], np.int64)
    for p in utt.phones:
        lab[(times >= p.start) & (times < p.end)] = idx[p.viseme]
    spans = speech.closure_spans(utt)
    closed = [p for p in utt.phones if p.viseme == "closed"]
    for (c0, c1), p in zip(spans, closed):
        if utt.synth == "espeak" and p.name[:1] == "p":
            nxt = next((q for q in utt.phones if q.start >= p.end - 1e-6), None)
            lab[(times >= p.start + 0.015) & (times < p.end)] = idx[nxt.viseme if nxt else "rest"]
            c1 = p.start + 0.015
        lab[(times >= c0) & (times < c1)] = idx["closed"]
    return lab


def clip_features(audio: np.ndarray, mel: LogMel) -> tuple[np.ndarray, np.ndarray]:
    """(times s, features) every STEP hops, exactly as the engine computes them live."""
    before = int(V.HISTORY_S * speech.RATE)
    after = int(0.06 * speech.RATE)
    x = np.concatenate([np.zeros(before, np.float32), audio, np.zeros(after, np.float32)])
    grid = np.arange(0, len(audio) + 1, HOP)
    centers = before + np.arange(-13 * HOP, len(audio) + 5 * HOP + 1, HOP)
    db = mel(x, centers)
    energy = V.frame_energy(db)
    off = 13  # row of grid time 0
    feats, times, peak = [], [], -25.0
    for i, g in enumerate(grid):
        rows = off + i + V.CONTEXT
        rows = np.clip(rows, 0, len(db) - 1)
        peak = V.track_peak(peak, float(energy[rows].max()), HOP / speech.RATE)
        if i % STEP == 0:
            feats.append(V.features(db[rows], peak))
            times.append(g / speech.RATE)
    return np.array(times), np.stack(feats)


def make_clips(n_espeak: int, n_festival: int, seed: int):
    rng = np.random.default_rng(seed)
    for k in range(n_espeak):
        lang = str(rng.choice(TRAIN_VOICES))
        base = lang.split("-")[0]
        text = (str(rng.choice(SENTENCES[base])) if base in SENTENCES and rng.random() < 0.55
                else random_text(rng))
        voice = lang + str(rng.choice(TRAIN_VARIANTS))
        try:
            u = speech.espeak(text, voice, int(rng.uniform(110, 320)), int(rng.uniform(15, 85)), int(rng.uniform(10, 90)))
        except ValueError:
            continue
        yield u
    fv = [v for v in FESTIVAL_TRAIN if v in speech.festival_voices()]
    for k in range(n_festival if fv else 0):
        voice = str(rng.choice(fv))
        lang = FESTIVAL_TRAIN[voice]
        text = str(rng.choice(SENTENCES[lang])) if rng.random() < 0.6 else random_text(rng)
        u = speech.festival(text, voice)
        if rng.random() < 0.5:
            u = speech.tempo(u, float(rng.uniform(0.75, 1.5)))
        yield u


def _part(job):
    n_espeak, n_festival, seed = job
    rng = np.random.default_rng(seed + 1)
    mel = LogMel(speech.RATE)
    X, Y, n = [], [], 0
    for u in make_clips(n_espeak, n_festival, seed):
        if rng.random() < 0.6:
            u = warp(u, rng)
        u = speech.pad(u, float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.05, 0.6)))
        t, f = clip_features(augment(u.audio, rng), mel)
        X.append(f)
        Y.append(frame_labels(u, t))
        n += 1
    return X, Y


def build_dataset(n_espeak: int, n_festival: int, seed: int, workers: int = 2):
    """Features, labels and clip numbers (for a held-out split by clip)."""
    from multiprocessing import get_context

    k = 8  # parts, each with its own seed
    jobs = [(n_espeak // k, n_festival // k, seed * 100 + i) for i in range(k)]
    with get_context("fork").Pool(workers) as pool:
        parts = pool.map(_part, jobs)
    X = [f for xs, _ in parts for f in xs]
    Y = [y for _, ys in parts for y in ys]
    G = [np.full(len(y), j) for j, y in enumerate(Y)]
    return np.concatenate(X), np.concatenate(Y), np.concatenate(G)


def train(X, Y, hidden, epochs, seed):
    import torch

    torch.manual_seed(seed)
    mean, std = X.mean(0), X.std(0) + 1e-3
    Xt = torch.from_numpy((X - mean) / std)
    Yt = torch.from_numpy(Y)
    layers, d = [], X.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Dropout(0.1)]
        d = h
    layers.append(torch.nn.Linear(d, len(V.VISEMES)))
    net = torch.nn.Sequential(*layers)
    counts = np.bincount(Y, minlength=len(V.VISEMES)).astype(np.float64)
    weight = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    weight /= weight.mean()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(X) // 512 + 1))
    lossf = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)
    for ep in range(epochs):
        perm = torch.randperm(len(X))
        net.train()
        tot = 0.0
        for i in range(0, len(X), 512):
            b = perm[i:i + 512]
            xb = Xt[b] + 0.05 * torch.randn(len(b), X.shape[1])
            loss = lossf(net(xb), Yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(b)
        print(f"epoch {ep + 1}/{epochs} loss {tot / len(X):.4f}", flush=True)
    net.eval()
    params = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(lin):
        params[f"w{i}"] = m.weight.detach().numpy().T.copy()
        params[f"b{i}"] = m.bias.detach().numpy().copy()
    return params


def report(net: V.VisemeNet, X, Y, title):
    pred = net(X).argmax(1)
    print(f"{title}: accuracy {np.mean(pred == Y):.3f}")
    for i, v in enumerate(V.VISEMES):
        m = Y == i
        if m.any():
            print(f"  {v:12s} n={m.sum():6d} recall {np.mean(pred[m] == i):.3f} "
                  f"precision {np.mean(Y[pred == i] == i) if (pred == i).any() else 0:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--espeak", type=int, default=4000, help="espeak-ng clips")
    ap.add_argument("--festival", type=int, default=1600, help="Festival clips")
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "vcam_talker" / "data" / "visemes.npz")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    t0 = time.time()
    X, Y, G = build_dataset(args.espeak, args.festival, args.seed)
    print(f"{len(X)} samples from {G.max() + 1} clips in {time.time() - t0:.0f} s; "
          f"classes {dict(zip(V.VISEMES, np.bincount(Y, minlength=7).tolist()))}", flush=True)
    val = G % 10 == 0
    params = train(X[~val], Y[~val], [int(h) for h in args.hidden.split(",")], args.epochs, args.seed)
    params["visemes"] = np.array(V.VISEMES)
    params["recipe"] = np.array(json.dumps({k: str(v) for k, v in vars(args).items()}))
    net = V.VisemeNet(params)
    report(net, X[val], Y[val], "held-out clips")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **params)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
