// libvncserver (Debian libvncserver-dev); used only by the VNCShim target.
#include <rfb/rfb.h>
