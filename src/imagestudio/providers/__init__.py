"""Image providers: the OpenAI images and chat APIs through the SDK, and the fake server."""
