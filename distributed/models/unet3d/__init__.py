"""The diffusers UNet3D family: ModelScope, Zeroscope and VideoCrafter2's diffusers port."""
