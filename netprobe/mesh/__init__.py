"""The fleet layer: one mesh file -> each host's probes, a shared timetable, rollups."""
