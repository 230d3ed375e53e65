"""scratchpilot.report"""
