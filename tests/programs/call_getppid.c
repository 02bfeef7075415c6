#include <stdio.h>
#include <unistd.h>

int main(void) {
  printf("getppid=%d\n", (int)getppid());
  return 0;
}
