"""Fakes of parts that cannot run in a unit test (house style: fakes live here, used only where the real part
cannot run)."""
