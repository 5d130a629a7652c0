"""The local stack: Kafka, PostgreSQL, Redis and Flink on 127.0.0.1, plus the platform's own
processes. Run ``python -m devstack.stack --help``."""
