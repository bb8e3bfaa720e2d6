"""What runs candidates on live traffic: model cards and loading (``models``), the
inference engine (``engine``, no Kafka) and the shadow worker around it (``worker``)."""
