"""One distribution for all of the platform's Python packages.

Beam ships it to the SDK workers with ``--setup_file``; ``make install`` installs it editable with
the exact versions of ``requirements/constraints.txt``.
"""

from setuptools import find_packages, setup

# Direct dependencies, pinned; the full transitive lock is requirements/constraints.txt.
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "tensorflow-cpu==2.21.0",
    "kafka-python==3.0.12",
    "crc32c==2.9.post0",  # kafka-python checks record CRCs in C with it, in pure Python without
    "sanic==25.12.1",
    "redis[hiredis]==8.1.0",
    "psycopg2-binary==2.9.13",
    "pyjwt[crypto]==2.15.1",
    "prometheus-client==0.26.0",
    "orjson==3.13.0",
    # The lifecycle tool's kubernetes backend (pipelines/lifecycle/kubernetes.py). 35.x: 36+
    # pulls aiohttp, 37 needs python-dateutil 3.
    "kubernetes==35.0.0",
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "hypothesis==6.170.17",
    "jsonschema==4.26.0",
    "kubernetes-validate==1.33.0",  # offline core Kubernetes schemas for the chart tests
    "websockets==17.4",
    "ruff==0.17.6",
    "mypy==2.4.1",
    "types-psycopg2==2.9.21.20261008",
]

setup(
    name="streaming-analytics",
    version="0.1.0",
    description="Real-time analytics: Kafka -> Beam (Flink) -> Postgres/Redis -> WebSocket push",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=[
        "streaming_analytics", "streaming_analytics.*",
        "pipelines", "pipelines.*",
        "transforms", "transforms.*",
        "models", "models.*",
        "push_server", "push_server.*",
        "devstack", "devstack.*",
    ]),
    package_data={
        "streaming_analytics": ["schemas/*.json", "db/migrations/*.sql"],
        "push_server": ["static/**/*"],
    },
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": [
            "sa-stack=devstack.stack.cli:main",
            "sa-generate=devstack.generator:main",
        ],
    },
)
