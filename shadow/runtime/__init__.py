"""What runs candidates on live traffic: model cards and loading (``models``), the
inference engine (``engine``, no Kafka), and the shadow worker around it (``worker``, with
its settings in ``config`` and its Prometheus metrics in ``metrics``)."""
