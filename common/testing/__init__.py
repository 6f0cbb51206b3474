"""Voxa's test harness kit: waiting, processes, launchers, /proc readings, statistics and profiling,
shared by tests/, e2e/ and bench/ so that each exists once (issue 15: a suite that holds under load).

It ships inside the package, as aiohttp.test_utils and kopf.testing do, so that every harness imports
it the same way (`voxa.common.testing`) whatever its working directory or sys.path. Nothing in the
product imports it. See docs/testing.md.
"""
