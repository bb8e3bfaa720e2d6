"""Work on recorded traffic: recording a topic (``recording``), replaying it through
candidates (``replay``) into a report (``report``, ``charts``), drift reference profiles
(``profiles``), writing a recording back to a topic (``republish``) and reading a windows
topic (``windows``)."""
