"""`caplab demo`: step-by-step vs direct on the same compositions split.

Trains the `demo` recipe twice, once per document format, with the same world
(functions and training compositions, fixed by task.seed), then prints the
unseen-composition accuracy of each and writes one report overlaying both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from caplab.config import load_config
from caplab.experiment import run_experiment
from caplab.runs.report import write_report
from caplab.runs.store import RunStore, now

log = logging.getLogger(__name__)


def run_demo(overrides: list[str] = (), root: Optional[Path] = None) -> dict:
    """Run both formats; return {format: final metrics record} and print the comparison."""
    finals, stores = {}, []
    for fmt in ("step_by_step", "direct"):
        cfg = load_config("demo", [*overrides, f"task.format={fmt}"])  # both runs are the demo recipe's (runs --recipe demo)
        log.info(f"caplab demo: training the {fmt} model ({cfg.train.steps} steps)")
        store = RunStore(run_experiment(cfg, root))
        stores.append(store)
        finals[fmt] = store.metrics()[-1]
    out = stores[0].path.parent / "reports" / f"demo-{now().replace(':', '')[:17]}"
    report = write_report(stores, out)

    print("\nunseen compositions (never trained on), greedy generation of F(x):")
    print(f"{'format':<14}{'exact match':>12}{'per token':>11}{'seen exact':>12}")
    for fmt, record in finals.items():
        print(f"{fmt:<14}{record['unseen_exact']:>12.3f}{record['unseen_token']:>11.3f}{record['seen_exact']:>12.3f}")
    print(f"\nruns:   {', '.join(str(s.path) for s in stores)}")
    print(f"report: {report}")
    return finals
