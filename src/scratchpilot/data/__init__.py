"""scratchpilot.data"""
