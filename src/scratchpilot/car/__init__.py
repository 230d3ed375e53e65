"""scratchpilot.car"""
