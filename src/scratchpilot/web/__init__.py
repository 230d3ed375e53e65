"""scratchpilot.web"""
