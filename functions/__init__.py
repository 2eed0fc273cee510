"""The workflow steps, one functions-framework entry point per module: CloudEvent in and out."""
