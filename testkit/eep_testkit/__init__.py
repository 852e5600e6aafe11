"""The test kit: what tests/, bench/ and demo/ share to play the operator's part, run pods and check answers.

Development only (never in an image). It may import the contract, the worker (the float64 reference), the
local cluster (its `free_port`) and test tools; nothing in operator/, worker/ or hack/ imports it.

Modules (what each holds -> who uses it):

- `standin`: `OperatorStandIn` with the sinks `MembershipFile` and `MembershipFeed` (ZMQ): membership
  snapshots in the contract's wire form, epochs that only grow -> `pods`, tests/worker, bench/cpu_recovery.py,
  bench/gpu_recovery.py.
- `pods`: `LocalPods` / `Pod`: `eep-worker serve` pods as local processes, configured by the contract's
  environment; replacements with `--rejoin`; kill; `kill_and_replace` (a lost member's whole round)
  -> tests/worker, bench/cpu_recovery.py.
- `reference`: `ReferenceChecker` (the float64 reference check), `fetch_model_config` (`GET /v1/model`)
  -> `client`, the demo's load client, bench/gpu_recovery.py (`check_rows`).
- `client`: `post_infer` (`InferRequest` -> `InferReply`, or `NoAnswer` / `WrongAnswer`), `CheckingClient`
  -> `stream`, tests/worker, bench/cpu_recovery.py, the demo.
- `stream`: `Stream`, one thread of checked requests with timed answers and kept errors; `tokens_for`
  (the i-th request's tokens) -> bench/cpu_recovery.py, tests/worker, bench/gpu_recovery.py (`tokens_for`).
- `crs`: ElasticEPCluster objects: `cluster` (bare, for stand-in or fake pods), `from_example` (the CPU
  example), `pod_template` / `engine_container` (a `spec.template`) -> tests/operator,
  bench/operator_scale.py, the demo, bench/mttr.py, bench/soak.py, tests/chart, tests/alerts, tests/cli.
- `membership`: `membership_of` (a CR's membership), `at_full_capacity`, `read_membership` (a snapshot file)
  -> the demo, tests/alerts, tests/chart.
- `pump`: `Pump` (a step repeated in a thread until stopped), `QueuePump` (queued typed events, by type)
  -> `stream`, `standin`, the demo, bench/operator_scale.py, bench/gpu_recovery.py.
- `wait`: `wait_until` (polling, with a message that says what was awaited) -> `pods`, `stream`,
  tests/conftest.py, tests/worker, bench/operator_scale.py, bench/gpu_recovery.py.
- `ports`: `free_port`, re-exported (its one home is `eep_localcluster.procs`) -> `pods`, `standin`,
  `prometheus`, tests, bench/gpu_recovery.py.
- `envfile`: `parse_env`, `versions` (hack/versions.env), `mooncake_cpu_env` -> tests/chart,
  bench/gpu_recovery.py.
- `stats`: `bootstrap_median_ci` (standard library only) -> bench/gpu_recovery.py, bench/pooled_step_ratio.py.
- `prometheus`: `Prometheus` (a real one with the alert rules), `scale_windows` -> the demo, tests/alerts.
- `tools`: `Tools`, the pinned kubectl and helm with one kubeconfig (`install_chart`: the operator's chart),
  `OperatorPorts` -> the demo, tests/conftest.py, tests/chart, tests/alerts.
- `http_client`: one HTTP request on a fresh connection -> `client`, `reference`, `pods`, `prometheus`.
- `kueue`: Kueue on a test cluster (`start_kueue`, `enable_namespace`), a queue with a quota
  (`create_queue`), plain group pods, `strip_finalizers` -> tests/localcluster, tests/operator (gang
  admission).
- `agents`: the process node's agents and their pods' processes -> tests/localcluster, bench/soak.py.
"""
