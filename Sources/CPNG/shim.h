// libpng's simplified API (png_image), which reports errors by return value
// instead of longjmp, so Swift can call it directly.
#include <png.h>
