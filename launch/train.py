"""Train pix2pix under DeepSpeed.

  deepspeed launch/train.py                                  # demo shards (built if missing or stale), GPU if present
  deepspeed launch/train.py --config configs/cityscapes.yaml run.dir=runs/cs
  deepspeed --num_gpus 2 launch/train.py train.steps=1000    # data parallel (CPU processes without GPUs)

Running again with the same run.dir resumes from its latest checkpoint. SIGTERM saves and exits.
"""

import sys

from p2p_dist.cli import config_parser, entry_point, parse_config
from p2p_dist.process_defaults import apply_process_defaults

NON_FINITE_STATUS = 3


@entry_point("train.py")
def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__, default_config="configs/demo.yaml")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; ignored")
    cfg, _ = parse_config(parser, argv)
    from p2p_dist.train.loop import NonFiniteLoss, train  # heavy imports once the config is known good

    evaluation = None
    if cfg.eval.every > 0:
        from p2p_dist.eval.periodic import PeriodicEvaluation

        evaluation = PeriodicEvaluation
    try:
        train(cfg, evaluation=evaluation)
    except NonFiniteLoss as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return NON_FINITE_STATUS
    return 0


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
