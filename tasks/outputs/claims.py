"""The claims report: each claim of the PLE paper (arXiv 2405.13977) and of AIM-Fair, checked against
the studies' summaries, written to metrics/claims.md and metrics/claims.json (docs/metrics.md).

    python -m tasks.outputs.claims [params.yaml]

A row's effect is a difference of two seed means at the summary's generation,
effect = mean_a - mean_b with SE = sqrt(se_a^2 + se_b^2), and `verdict` judges it. A summary that is
missing, or lacks an entry a row needs, leaves that row pending; a summary that exists but cannot be
read as one stops with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tasks.errors import InputUnavailableError, report
from tasks.infra import storage
from tasks.response import DEGENERATE_BELOW, Z, degenerate, identified
from tasks.studies import load_params, spec

Direction = Literal["positive", "negative"]
PENDING = "pending"
MISSING = "—"
OUTPUTS = (Path("metrics/claims.json"), Path("metrics/claims.md"))
HYPER_SETTING = {"lambda": ("ple", "lam"), "head": ("hyper", "head"), "rank": ("hyper", "rank"),
                 "penalty": ("ple", "penalty"), "form": ("ple", "form"), "training": ("ple", "training")}


@dataclass(frozen=True)
class Term:
    """The seed statistics `<metric>_mean`, `<metric>_se` of one method; with a `target`, the distance
    |mean - target| with the mean's SE (exact while the mean stays on one side of the target)."""

    method: str
    metric: str
    target: float | None = None

    def __str__(self) -> str:
        term = f"{self.metric}({self.method})"
        return term if self.target is None else f"|{term} - {self.target:g}|"

    def of(self, summary: dict | None, point: str | None) -> tuple[float | None, float | None]:
        mean, se = statistics(summary, self.method, point, self.metric)
        return (mean if mean is None or self.target is None else abs(mean - self.target)), se


def coordinates(point: str) -> dict[str, str]:
    """'weight=0.95,n_samples=50' -> {'weight': '0.95', 'n_samples': '50'} (tasks.outputs.tables.summary)."""
    return dict(part.partition("=")[::2] for part in point.split(","))


def corner(points: Iterable[str]) -> str | None:
    """The point of largest weight, then smallest n_samples: the imbalanced, low-data corner."""
    usable = [p for p in points if {"weight", "n_samples"} <= coordinates(p).keys()]
    return min(usable, key=lambda p: (-float(coordinates(p)["weight"]), float(coordinates(p)["n_samples"])),
               default=None)


def at(point: str) -> Callable[[Iterable[str]], str | None]:
    """A selector of one fixed grid point."""
    return lambda points: point if point in points else None


@dataclass(frozen=True)
class Claim:
    """One row: effect = a - b, claimed to have the sign `direction`.

    `point` picks the grid point from those of the summary (None: a summary without a grid);
    `responses` are the hypernetwork methods whose response is shown; those of them that a or b
    names must be measured and not degenerate. A claim without a study (`study` None) stays pending."""

    key: str
    text: str
    study: str | None
    a: Term | None = None
    b: Term | None = None
    direction: Direction | None = None
    point: Callable[[Iterable[str]], str | None] | None = None
    responses: tuple[str, ...] = ()
    response_note: str = "n/a"

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(t.method for t in (self.a, self.b) if t)

    @property
    def judged(self) -> tuple[str, ...]:
        """The hypernetwork methods the row compares."""
        return tuple(m for m in self.responses if m in self.methods)


HYPER = ("ple", "hyper_mle")
CLAIMS: tuple[Claim, ...] = (
    Claim("gan_fid", "Fig. 2: a GAN's FID stays stable across generations under PLE: below MLE's at the last "
          "generation", "digits_gan", Term("ple", "fid_classifier"), Term("mle", "fid_classifier"), "negative",
          responses=HYPER),
    Claim("diffusion_fid", "Fig. 2's claim for a diffusion model: PLE's FID below MLE's at the last generation",
          "digits_diffusion", Term("ple", "fid_classifier"), Term("mle", "fid_classifier"), "negative",
          responses=HYPER),
    Claim("gmm_kl", "Fig. 3: in the imbalanced, low-data corner of the GMM grid PLE's KL is below MLE's", "gmm",
          Term("ple", "kl"), Term("mle", "kl"), "negative", corner, HYPER),
    Claim("grid_collapse", "Fig. 4: on the distribution grid MLE collapses faster than PLE", "grid",
          Term("ple", "sigma_bias"), Term("mle", "sigma_bias"), "positive", at("distribution=normal"), HYPER),
    Claim("gaussian_sigma", "Fig. 5: the Gaussian's sigma decays under MLE and stays under PLE", "gaussian",
          Term("ple", "sigma_hat"), Term("mle", "sigma_hat"), "positive",
          response_note="analytic (no hypernetwork)"),
    Claim("digits_minority", "PLE keeps the minority class at its real share better than MLE", "digits",
          Term("ple", "minority_ratio", 1.0), Term("mle", "minority_ratio", 1.0), "negative", responses=HYPER),
    Claim("fairness_eo", "AIM-Fair: selective fine-tuning lowers the equalized-odds gap below full fine-tuning",
          "fairness", Term("mle", "eo_selective"), Term("mle", "eo_finetune"), "negative"),
)


def verdict(effect: float | None, se: float | None, direction: Direction | None,
            responses: Mapping[str, float | None], identified: bool = True) -> str:
    """The first that applies, with s = +1 for a claimed positive effect and -1 for a negative one:
    pending (effect or SE missing); invalid (response not identified) (`identified` False: MLE's own
    probe slope is not beyond Z SE above 0, so no response can be measured relative to it);
    invalid (degenerate H) (a mean response below DEGENERATE_BELOW);
    invalid (response not measured) (a mean response missing); supported (s * effect > Z * SE);
    contradicted (s * effect < -Z * SE); not shown (|effect| <= Z * SE)."""
    if effect is None or se is None:
        return PENDING
    if not identified:
        return "invalid (response not identified)"
    if any(mean is not None and degenerate(mean) for mean in responses.values()):
        return "invalid (degenerate H)"
    if any(mean is None for mean in responses.values()):
        return "invalid (response not measured)"
    signed = effect if direction == "positive" else -effect
    if signed > Z * se:
        return "supported"
    if signed < -Z * se:
        return "contradicted"
    return "not shown"


def _is_stats(value: object) -> bool:
    """{statistic: number or flag}, e.g. {'kl_mean': 0.3, 'degenerate': False}."""
    return isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values())


def _is_summary(doc: object) -> bool:
    """{'generation': G, method: statistics} or {'generation': G, method: {point: statistics}}."""
    return (isinstance(doc, dict) and isinstance(doc.get("generation"), int)
            and all(_is_stats(e) or (isinstance(e, dict) and all(map(_is_stats, e.values())))
                    for k, e in doc.items() if k != "generation"))


def read_summary(study: str, root: Path = Path(".")) -> dict | None:
    """metrics/<study>/summary.json; None when it does not exist, InputUnavailableError when it cannot be used."""
    path = root / "metrics" / study / "summary.json"
    fix = f"restore it with `git checkout -- {path}` (DVC does not cache it) or rerun `dvc repro {study}`"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputUnavailableError(f"{path}: cannot be read ({exc.strerror}); {fix}") from None
    except ValueError as exc:
        raise InputUnavailableError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); {fix}") from None
    if not _is_summary(doc):
        raise InputUnavailableError(f"{path}: not a summary ({{\"generation\": G, method: statistics}}); {fix}")
    return doc


def _finite(value: object) -> float | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) else None


def statistics(summary: dict | None, method: str, point: str | None, metric: str) -> tuple[float | None, float | None]:
    """(mean, SE) of `metric` for `method` at `point`; None for what the summary lacks."""
    entry = (summary or {}).get(method, {})
    if point is not None:
        entry = entry.get(point) if _is_stats(entry.get(point)) else {}
    return _finite(entry.get(f"{metric}_mean")), _finite(entry.get(f"{metric}_se"))


def difference(a: tuple[float | None, float | None], b: tuple[float | None, float | None]
               ) -> tuple[float | None, float | None]:
    """(mean_a - mean_b, sqrt(se_a^2 + se_b^2)): the SE of a difference of independent means."""
    if None in (*a, *b):
        return None, None
    return a[0] - b[0], math.hypot(a[1], b[1])


def plus_minus(mean: float, se: float | None) -> str:
    """'mean ± se', se to 2 significant digits and mean to the same decimal place."""
    if se is None:
        return f"{mean:.3g}"
    decimals = max(0, 1 - math.floor(math.log10(se))) if se > 0 else 3
    return f"{mean:.{decimals}f} ± {se:.{decimals}f}"


def grid_point(claim: Claim, summary: dict | None) -> str | None:
    """The claim's point among those the compared methods have in the summary."""
    if claim.point is None or summary is None:
        return None
    entries = [summary.get(m) for m in claim.methods]
    return claim.point({p for e in entries if isinstance(e, dict) for p, v in e.items() if isinstance(v, dict)})


def setting(claim: Claim, section: BaseModel | None, summary: dict | None, point: str | None) -> dict:
    """The point, n, seeds, generations, the summary's generation and, with hypernetworks, H's settings."""
    if section is None:
        return {}
    n = coordinates(point).get("n_samples") if point else None
    out = {"point": point, "n": int(float(n)) if n else getattr(section, "n_samples", None), "seeds": section.seeds,
           "generations": section.generations, "generation": summary["generation"] if summary else None}
    if claim.responses:
        out |= {name: getattr(getattr(section, part), key) for name, (part, key) in HYPER_SETTING.items()}
    return {k: v for k, v in out.items() if v is not None}


def evaluate(claim: Claim, summary: dict | None, section: BaseModel | None) -> dict:
    """The claim's row: claim, study, value, effect, se, direction, setting, response, responses, verdict."""
    point = grid_point(claim, summary)
    terms = [t.of(summary, point) for t in (claim.a, claim.b) if t]
    effect, se = difference(*terms) if len(terms) == 2 else (None, None)
    responses = {m: statistics(summary, m, point, "response") for m in claim.responses}
    references = [statistics(summary, m, point, "response_slope_mle") for m in claim.judged]
    known = all(mean is None or identified(mean, math.nan if se is None else se) for mean, se in references)
    missing = "not measured" if known else "not identified"
    shown = "; ".join(f"{m} {plus_minus(*r) if r[0] is not None else missing}" for m, r in responses.items())
    if references and references[0][0] is not None:
        shown += f" (MLE's slope {plus_minus(*references[0])})"
    return {
        "claim": claim.text,
        "study": claim.study or MISSING,
        "value": MISSING if effect is None else plus_minus(effect, se),
        "effect": effect,
        "se": se,
        "direction": claim.direction,
        "setting": setting(claim, section, summary, point),
        "response": shown or claim.response_note,
        "responses": {m: None if r[0] is None else {"mean": r[0], "se": r[1]} for m, r in responses.items()},
        "verdict": verdict(effect, se, claim.direction, {m: responses[m][0] for m in claim.judged}, known),
    }


def rows(params_file: str | Path, root: Path = Path(".")) -> dict[str, dict]:
    """Every claim's row, by key; all summaries are read (and checked) first."""
    params = load_params(params_file)
    studies = {c.study for c in CLAIMS if c.study}
    summaries = {s: read_summary(s, root) for s in sorted(studies)}
    return {c.key: evaluate(c, summaries.get(c.study), c.study and getattr(params, spec(c.study).section))
            for c in CLAIMS}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_setting(setting: dict) -> str:
    """'point: key=value, ...' ('—' when empty)."""
    pairs = ", ".join(f"{k}={v}" for k, v in setting.items() if k != "point")
    return f"{setting['point']}: {pairs}" if "point" in setting else pairs or MISSING


def markdown(table: dict[str, dict]) -> str:
    """The report: how it is made, the verdict rule, the table and each row's effect."""
    head = [
        "# Claims report", "",
        "Written by `python -m tasks.outputs.claims params.yaml` (DVC stage `claims`) from "
        "`metrics/<study>/summary.json`; do not edit. Definitions: docs/metrics.md, \"Claims report\".", "",
        "value: effect ± SE at the summary's generation, effect = mean_a - mean_b over seeds, "
        "SE = sqrt(SE_a^2 + SE_b^2) (seeds taken as independent). response: mean ± SE over seeds of the "
        "relative response of each hypernetwork method, and the MLE reference slope it is relative to.", "",
        "Verdict, the first that applies (s = +1 for a claimed positive effect, -1 for a negative one):", "",
        f"1. {PENDING}: no study yet, or a mean or SE the row needs is missing;",
        f"2. invalid (response not identified): MLE's own probe slope is not beyond {Z:g} SE above 0;",
        "3. invalid (degenerate H): a hypernetwork method the row compares has mean response below "
        f"{DEGENERATE_BELOW};",
        "4. invalid (response not measured): such a method's response is missing;",
        f"5. supported: s * effect > {Z:g} SE;",
        f"6. contradicted: s * effect < -{Z:g} SE;",
        f"7. not shown: |effect| <= {Z:g} SE.", "",
        "| claim | study | value | setting | response | verdict |",
        "|---|---|---|---|---|---|",
    ]
    body = ["| " + " | ".join(_cell(c) for c in (r["claim"], r["study"], r["value"], render_setting(r["setting"]),
                                                  r["response"], r["verdict"])) + " |" for r in table.values()]
    effects = ["", "Effects:", ""] + [f"- {c.text}: `{c.a} - {c.b}`, claimed {c.direction}."
                                      for c in CLAIMS if c.a and c.b]
    return "\n".join(head + body + effects) + "\n"


def write(params_file: str | Path, root: Path = Path(".")) -> None:
    """metrics/claims.json and metrics/claims.md, each written atomically once every row is known."""
    table = rows(params_file, root)
    json_path, md_path = (root / p for p in OUTPUTS)
    storage.write_text(json_path, json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    storage.write_text(md_path, markdown(table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    return report(lambda: write(args.params))


if __name__ == "__main__":
    sys.exit(main())
