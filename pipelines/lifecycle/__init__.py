"""The job's lifecycle: deploy, savepoint, upgrade and roll back with one command each, on the local
Flink session cluster or on Kubernetes, with a savepoint catalogue, a state-compatibility check and
an SLO watch that rolls a breaching release back by itself (docs/operations.md).

Modules: ``model`` (releases, savepoint records, versions, job status), ``backend`` (the interface
of both backends), ``local`` (Flink's REST API), ``kubernetes`` (the FlinkDeployment),
``catalogue`` (the records: savepoints, releases, rollback point, audit trail), ``compat`` (stateful
operators and their Flink UIDs), ``offsets`` (the consumer group's committed and end offsets),
``service`` (the actions), ``watch`` (the SLO watch), ``__main__``
(the CLI: ``python -m pipelines.lifecycle --help``).
"""
