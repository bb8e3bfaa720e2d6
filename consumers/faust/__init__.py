"""The join as a Faust app: the agents, the changelogged tables, the /metrics collector and
the Redis alert sink. The only package that imports faust (or redis) on the join's side;
everything it computes comes from the pure core in ``consumers``."""
