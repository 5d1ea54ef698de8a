"""Rule-based playbooks: why an SLO fails and which flags to change.

`playbooks.engine.diagnose(windows, ...)` judges collector windows against the rule files in
`playbooks/rules/*.yaml` (plus any user files, `playbooks.model.load_playbooks`) and returns a
`Diagnosis` whose findings cite evidence and propose config deltas.
"""
