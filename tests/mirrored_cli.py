"""Run by tests/test_distributed.py: ``translator`` (the CLI) with 2 logical CPU devices, so that
``train.distribute=mirrored`` has 2 replicas in one process. Arguments: the CLI's."""
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from translator.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
