"""The sidecar: a control loop beside one vLLM target (scrape → windows → SLOs → playbooks →
persist → metrics → notify → recommend/apply), an outbox for signed notifications, and the runtime
that serves it through `slotune.api`. See docs/sidecar.md."""
