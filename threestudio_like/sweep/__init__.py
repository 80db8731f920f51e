"""Sweeps: a grid of ordinary ``launch.py --train`` runs (variants × prompts × seeds × stages),
scheduled by Ray (or one after another without it), recorded in a SQLite ledger in the sweep folder.

    python -m threestudio_like.sweep --config configs/sds-nerf.yaml --variants sds-nerf,vsd-nerf \\
        --prompts prompts.txt --seeds 0,1 --out outputs/sweep trainer.max_steps=600
    python -m threestudio_like.sweep status outputs/sweep

The parts: ``grid`` (jobs and their config hashes), ``ledger`` (the database), ``task`` (one launch of
one job, the same code under either executor), ``executors`` (Ray or sequential), ``driver`` (claims,
retries, progress), ``report`` (status table, comparison report, ground-truth table), ``cli``.
"""
