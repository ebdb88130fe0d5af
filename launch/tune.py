"""Ray Tune sweep over lambda_l1, lr_g, lr_d (and tune.choices): ASHA or PBT on a validation metric.

  python launch/tune.py                                           # configs/tune_demo.yaml: 4 trials, ASHA
  python launch/tune.py --config configs/tune_demo.yaml tune.scheduler=pbt tune.name=demo_pbt
  python launch/tune.py --config configs/tune_demo.yaml --resume  # continue an interrupted sweep
  python launch/tune.py tune.address=auto tune.storage_path=/shared/tune tune.workers_per_trial=2

Results go to tune.storage_path/tune.name: results.csv/.md, best_config.yaml, metric_vs_step.png, trial_*/.
Running on a cluster: see the docstring of p2p_dist/tune/__init__.py.
"""

import sys

from p2p_dist.cli import config_parser, entry_point, parse_config
from p2p_dist.process_defaults import apply_process_defaults


@entry_point("tune.py")
def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__, default_config="configs/tune_demo.yaml")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep at tune.storage_path/tune.name with the config it started with",
    )
    cfg, args = parse_config(parser, argv)
    from p2p_dist.tune.sweep import run_sweep  # Ray, torch and DALI load once the config is known good

    report = run_sweep(cfg, resume=args.resume)
    print(report.render(), flush=True)
    return 0


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
