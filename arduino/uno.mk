# Arduino.mk settings for building scratchpilot_rc.ino for an Arduino Uno with Debian's toolchain
# (gcc-avr, avr-libc, arduino-core-avr, arduino-mk). Used by `make -C arduino sketch`; run from the
# sketch folder, e.g. `make -C scratchpilot_rc -f ../uno.mk upload MONITOR_PORT=/dev/ttyACM0`.
BOARD_TAG    = uno
ARDUINO_DIR ?= /usr/share/arduino
ARDMK_DIR   ?= /usr/share/arduino
ARDUINO_LIBS =
OBJDIR      ?= ../build/uno
# Debian 12 pairs arduino-core-avr 1.8.7 with avr-gcc 5.4, whose <float.h> defines DECIMAL_DIG for
# C99 only, so the core's WString.cpp does not compile as C++11
# (https://github.com/arduino/ArduinoCore-avr/issues/633). The compiler's own value is the right one.
CXXFLAGS_STD = -std=gnu++11 -fno-threadsafe-statics -flto -DDECIMAL_DIG=__DECIMAL_DIG__
include $(ARDMK_DIR)/Arduino.mk
