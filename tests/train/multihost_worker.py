"""One process of a multi-host smoke run (launched by tests/train/test_multihost.py)."""

import sys


def main() -> None:
    import jax

    process_id, port, workdir, config_file = sys.argv[1:5]
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id)
    )

    from jaxlm.config import load_config
    from jaxlm.train.loop import train_and_evaluate

    config = load_config(config_file + ":smoke")
    config.train.num_steps = 20
    config.train.log_every = 5
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    config.model.dropout = 0.0
    result = train_and_evaluate(config, workdir)
    print(
        f"RESULT {jax.process_index()} {jax.process_count()} {jax.device_count()} "
        f"{result['validation_loss']!r}",
        flush=True,
    )


if __name__ == "__main__":
    main()
