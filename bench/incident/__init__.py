"""bench/incident: the 21:00 incident, scripted on simulated providers, replayed for each routing policy."""
