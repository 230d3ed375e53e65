"""scratchpilot.digits"""
