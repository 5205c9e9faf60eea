"""data_tools: Math Stack Exchange dump -> cleaned corpus -> token files."""
