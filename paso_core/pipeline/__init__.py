"""Pipeline parallelism: readable oracle schedules (:mod:`.schedule_oracle`), stage splits
(:mod:`.split`), stages on ``torch.distributed.pipelining`` (:mod:`.stages`) and the
training loop of the ``pp`` and ``model_parallel`` methods (:mod:`.training`).

The oracle and the splits are pure Python; importing this package imports neither torch
nor the engines.
"""
