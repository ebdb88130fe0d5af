"""Ray Tune sweeps over the pix2pix recipe: ``python launch/tune.py --config configs/tune_demo.yaml``.

What is searched: ``train.lambda_l1``, ``train.lr_g`` and ``train.lr_d`` log-uniformly within the ranges
``tune.lambda_l1 / tune.lr_g / tune.lr_d`` (``[low, high]``; ``[v, v]`` pins a value), plus every dotted key
in ``tune.choices`` (``{model.norm: [batch, instance], model.ngf: [32, 64]}``). The objective is an image
metric from the trainer's periodic evaluation (``eval.every`` steps): ``tune.metric`` = ``fcn_miou`` (FCN-score
mean IoU, maximised; needs ``eval.fcn``), ``fid`` (needs ``eval.fid``) or ``l1`` (both minimised). It is
scored on ``tune.holdout_images`` train images spread evenly over the train split and held out of every
trial's training (``data.holdout``, p2p_dist.data.holdout), so the val split, which final results are reported
on, plays no part in choosing them (``tune.holdout_images=0`` scores on val instead); the results table says
which. The best config trains on the whole train split. ``tune.scheduler`` = ``asha`` stops weak trials early
at rungs of ``tune.grace_period``
x ``tune.reduction_factor``^k evaluations; ``pbt`` lets weak trials copy a strong trial's checkpoint every
``tune.perturbation_interval`` evaluations and continue with mutated parameters (the trainer applies the
mutated learning rates to the restored optimisers).

Every trial runs the project's trainer (``p2p_dist.train.loop.train``): as one process, or, with
``tune.workers_per_trial`` N > 1, as N data-parallel DeepSpeed ranks through Ray Train (a ``TorchTrainer``
started by the trial: gloo on CPU, nccl on GPU). Each trial reserves ``tune.cpus_per_worker`` CPUs and,
with ``tune.use_gpu`` (``auto``: when the cluster has GPUs), one GPU per worker.

Outputs, under ``<tune.storage_path>/<tune.name>/``::

    sweep_config.yaml      the config the sweep started with (--resume continues with it)
    results.csv, .md       one row per trial: searched values, status, steps, final and best objective
    best_config.yaml       the best trial's training config: python launch/train.py --config best_config.yaml
    metric_vs_step.png     the objective against steps for every trial
    trial_<id>/            Tune's result files and checkpoints; run/ is the trainer's run directory
                           (metrics.jsonl, samples/, tensorboard/, checkpoints/, restores.jsonl)

A failed trial is restarted from its last checkpoint up to ``tune.max_failures`` times. An interrupted
sweep (Ctrl-C, a lost driver) continues with ``python launch/tune.py --config SAME.yaml --resume``.

Running on a Ray cluster
------------------------
1. Put ``tune.storage_path`` on storage every node mounts at the same path (NFS, a parallel filesystem):
   trials write their run directories and checkpoints there, and a trial restarted or exploited on
   another node reads them back. The shards (``data.shards``) must be readable at the same path too.
2. Start the head node, then each worker node (same Python environment and project checkout)::

       ray start --head --port=6379 --dashboard-host=0.0.0.0      # on the head
       ray start --address=HEAD_IP:6379                             # on every other node

   Ray 2.60 uses token authentication by default: every node and the process that launches the sweep must
   present the same token. Export it everywhere before ``ray start`` and before launching::

       export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c "import secrets; print(secrets.token_hex(16))")

   (generate it once, then copy the value; copying ``~/.ray/auth_token`` to every node also works).
   GPUs are detected per node (``--num-gpus`` overrides); ``--num-cpus`` limits what Ray hands out.
3. Launch from the head (or any node of the cluster)::

       python launch/tune.py --config configs/cityscapes.yaml tune.address=auto \\
           tune.storage_path=/shared/tune tune.workers_per_trial=4 tune.use_gpu=yes

   Each trial then trains on 4 GPUs (one DeepSpeed rank per GPU, possibly spread over nodes) and as many
   trials run at once as the cluster has GPUs for. ``ray stop`` on every node ends the cluster.
"""

import os

# Ray reads this when it is imported. Trials' progress lines differ only in their numbers, which Ray's log
# deduplication would fold into one "[repeated Nx across cluster]" line.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
