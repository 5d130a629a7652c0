"""Support code shared by the tests and the benchmarks: never imported by production packages.

``push_process`` runs a real push server process and speaks to it as a client; ``cdp`` drives
Debian's headless Chromium for the dashboard's browser test; ``waiting`` polls for conditions
instead of sleeping; ``crd_schemas`` validates custom resources against the CRDs in
``../shared/schemas/crds``; ``fake_kube_api`` is a fake Kubernetes API server with a fake Flink
operator for the lifecycle's kubernetes backend.
"""
