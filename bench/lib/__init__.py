"""The parts of bench/run: what they share (base), processes started and
stopped by PID (processes), the set-up (setup), the services under test
(services), wrk runs (wrk), the measured rounds (rounds) and the tables
(report). Python 3 standard library only."""
